//! Mixed precision: the compute copy is bf16, the gradients reach the f32 parameters in f32.
use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};
use ember_ops::precision::{cast_params, supported, Precision};

type B = Autodiff<Flex>;

#[derive(Module, Debug)]
struct Affine<B: burn::tensor::backend::Backend> {
    weight: Param<Tensor<B, 2>>,
}

#[test]
fn bf16_compute_gives_f32_gradients_to_f32_parameters() {
    let device = Default::default();
    assert!(supported::<B>(Precision::Bf16, &device));
    let master = Affine { weight: Param::from_tensor(Tensor::<B, 2>::ones([8, 8], &device).require_grad()) };
    let compute = cast_params(master.clone(), Precision::Bf16);
    assert_eq!(compute.weight.val().dtype(), DType::BF16);
    assert_eq!(master.weight.val().dtype(), DType::F32);

    let x = Tensor::<B, 2>::ones([4, 8], &device).cast(burn::tensor::FloatDType::BF16);
    let loss = ember_ops::precision::to_f32(x.matmul(compute.weight.val())).sum();
    let grads = loss.backward();
    let grad = master.weight.val().grad(&grads).expect("the f32 parameter has a gradient");
    assert_eq!(grad.dtype(), DType::F32);
    // d(sum(x W))/dW = xᵀ 1 = 4 everywhere.
    assert!(grad.into_data().to_vec::<f32>().unwrap().iter().all(|&g| g == 4.0));
}

#[test]
fn f32_is_a_no_op_and_ndarray_has_no_bf16() {
    let device = Default::default();
    let master = Affine { weight: Param::from_tensor(Tensor::<B, 2>::ones([2, 2], &device)) };
    assert_eq!(cast_params(master, Precision::F32).weight.val().dtype(), DType::F32);
    assert!(!supported::<burn::backend::NdArray<f32>>(Precision::Bf16, &Default::default()));
}
